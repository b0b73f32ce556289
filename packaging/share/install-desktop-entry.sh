#!/bin/sh
# Registers W+ Studio with the desktop (Linux, per user, no root): the applications menu, "Open with…"
# for JPEG/PNG/WebP/BMP, and dropping a photo on the launcher. Run it from the unpacked bundle:
#   dist/WPlusStudio/_internal/share/install-desktop-entry.sh      (remove: add --uninstall)
set -e
here=$(cd "$(dirname "$0")" && pwd)
bundle=$(cd "$here/../.." && pwd)
exe="$bundle/wplus-studio"
icon="$bundle/_internal/resources/icons/app.svg"
apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
entry="$apps/wplus-studio.desktop"
if [ "$1" = "--uninstall" ]; then
    rm -f "$entry"
else
    [ -x "$exe" ] || { echo "wplus-studio not found at $exe: run this script from the bundle" >&2; exit 1; }
    mkdir -p "$apps"
    sed -e "s|@EXEC@|\"$exe\"|g" -e "s|@ICON@|$icon|g" "$here/wplus-studio.desktop" > "$entry"
    echo "installed $entry"
fi
command -v update-desktop-database >/dev/null && update-desktop-database "$apps" || true
