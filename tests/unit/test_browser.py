"""tests.browser without a browser: which of a package's dependencies it fetches."""

from __future__ import annotations

from tests import browser

# `apt-cache depends chromium` on Debian bookworm, shortened (the real one has 40 plain Depends).
CHROMIUM = """chromium
  Depends: libasound2
  Depends: libpulse0
 |Depends: libgtk-3-0
  Depends: <xdg-desktop-portal-backend>
    xdg-desktop-portal-gnome
    xdg-desktop-portal-gtk
  Depends: chromium-common
  Suggests: chromium-l10n
"""


def test_only_plain_depends_are_followed_not_alternatives_virtuals_or_suggestions():
    assert browser.plain_depends(CHROMIUM) == ["libasound2", "libpulse0", "chromium-common"]


def test_the_library_path_holds_every_folder_with_shared_libraries(tmp_path):
    lib = tmp_path / "usr" / "lib" / "x86_64-linux-gnu"
    (lib / "pulseaudio").mkdir(parents=True)
    (lib / "libpulse.so.0").touch()
    (lib / "pulseaudio" / "libpulsecommon-16.1.so").touch()
    env = browser.browser_env(tmp_path)
    assert env["LD_LIBRARY_PATH"].split(":")[:2] == [str(lib), str(lib / "pulseaudio")]


def test_a_machine_without_apt_gets_a_reason_to_skip(monkeypatch, tmp_path):
    """Where Debian's tools are missing the browser is unavailable (the services test skips), not broken."""
    import shutil

    import pytest

    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "apt-get" else f"/usr/bin/{tool}")
    with pytest.raises(browser.BrowserUnavailable, match="apt-get not found"):
        browser.chromium(tmp_path, out=lambda _: None)
