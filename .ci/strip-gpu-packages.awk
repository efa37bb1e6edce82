# Drops torch's CUDA runtime packages (nvidia-*, cuda-*, triton) from the lock: the lock is
# installed with --no-deps, and a second `pip install torch==...` resolves them only on
# machines whose torch build needs them (a CPU wheel needs none).
/^[A-Za-z0-9]/ { skip = ($0 ~ /^(nvidia-|cuda-|triton==)/) }
!skip { print }
