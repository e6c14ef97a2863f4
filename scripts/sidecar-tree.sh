# Sourced by test.sh and demo.sh. The sidecar runs as uid 1337, as in a pod, so it must be able to
# read the built tree. A checkout it cannot read (a clone under /root, mode 700) is copied, without
# .git, to a private directory under /tmp that it can read; SIDECAR_TREE names the tree to run
# from, and the copy is removed when the calling script exits.
SIDECAR_UID=1337
SIDECAR_TREE=$PWD
if [[ $(id -u) == 0 ]] && ! setpriv --reuid=$SIDECAR_UID --regid=$SIDECAR_UID --clear-groups -- \
    test -r "$PWD/dist/src/cli/main.js" 2>/dev/null; then
  SIDECAR_TREE=$(mktemp -d /tmp/halfclose-tree.XXXXXX)
  trap 'rm -rf "$SIDECAR_TREE"' EXIT
  tar -C "$PWD" --exclude=./.git --exclude=./lab-report.html -cf - . | tar -C "$SIDECAR_TREE" -xf -
  chmod -R go+rX,go-w "$SIDECAR_TREE"
  echo "note: uid $SIDECAR_UID cannot read $PWD; running from a readable copy in $SIDECAR_TREE" >&2
fi
