#!/usr/bin/env bash
# The device tests on arm64 (issue 26): an arm64 Debian (Raspberry Pi OS's base) built with debootstrap,
# run under qemu-user-static through binfmt_misc, `.[device]` installed NON-editable from a copy of this
# checkout, then `edge doctor` (with its golden check) on every committed bundle and a subset of the
# device tests. Needs root. On a 2-core machine: ~20 min from a clean cache, ~N min with the cached root.
#
#   sudo scripts/arm64_check.sh            # what .ci/run calls
#   ARM64_KEEP=1 scripts/arm64_check.sh    # leave the root in $ARM64_WORK for a look (chroot it)
#
# The root with Python and the device dependencies is cached as a tarball under
# ${XDG_CACHE_HOME:-~/.cache}/edge-hemato/arm64/, keyed by the Debian release (and RECIPE below);
# delete it to start clean. Each run installs what is new in the dependencies on top of it.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
RELEASE=${ARM64_RELEASE:-bookworm}
# The CPU qemu emulates: a Raspberry Pi 4's (no dot-product instructions), so the int8 kernels the
# runtime picks are the ones a Pi 4 runs; cortex-a76 for a Pi 5, max for everything qemu has.
CPU=${ARM64_CPU:-cortex-a72}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
CACHE=${ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-hemato/arm64}
RECIPE=1  # raise when build_root changes what the cached root holds
TARBALL=$CACHE/debian-$RELEASE-arm64-r$RECIPE.tar.zst
WORK=${ARM64_WORK:-$(mktemp -d "${TMPDIR:-/var/tmp}/edge-arm64.XXXXXX")}
ROOT=$WORK/root
# Debian packages of the root: Python and its venv, CA certificates for pip.
ROOT_PACKAGES=python3,python3-venv,ca-certificates
# The device tests that run there: bit-exact preprocessing, and classify/runtime/doctor tests that need
# no TensorFlow (the rest of the device suite runs on x86 in `make test-device`). Not the doctor's XNNPACK
# check: under emulation, without the host's /sys (see mount_root), it warns.
TESTS=(
  tests/test_preprocess_exact.py
  tests/test_golden.py
  tests/test_predict.py
  tests/test_runtime.py::test_batches_give_the_same_numbers_as_single_images
  tests/test_runtime.py::test_runtime_choice_threads_and_xnnpack
  tests/test_runtime.py::test_dequantize_uses_int64_like_pycoral
  tests/test_classify.py::test_classify_csv_top_k_and_threshold
  tests/test_classify.py::test_classify_bad_bundle_and_empty_folder_are_one_line_errors
  tests/test_doctor.py::test_doctor_fails_on_a_broken_bundle
)
START=$(date +%s)

log() { printf '[arm64 %4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"

# --- the host: debootstrap, qemu-user-static, zstd; binfmt_misc with an arm64 interpreter -------------
host_packages() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v zstd >/dev/null || missing+=(zstd)
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  [ -e $dir/register ] || mount -t binfmt_misc binfmt_misc $dir
  if ! grep -qs enabled $dir/qemu-aarch64; then
    log "registering qemu-aarch64-static with binfmt_misc (flag F: usable inside the chroot)"
    # the ELF header of an aarch64 executable, and its mask (Debian's qemu-user-static entry)
    printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$(command -v qemu-aarch64-static)"':F' >$dir/register
  fi
}

# --- the root ------------------------------------------------------------------------------------------
mounted=()
mount_root() {
  mount -t proc proc "$ROOT/proc" && mounted+=("$ROOT/proc")
  mount --bind /dev "$ROOT/dev" && mounted+=("$ROOT/dev")
  # No sysfs: with the host's /sys mounted, the runtime's cpuinfo reads an x86-64 CPU's lists under the
  # emulated arm64 one and LiteRT's Interpreter segfaults (every bundle, here). Without it cpuinfo says
  # "failed to parse both lists of possible and present processors" and goes on.
  mount -t tmpfs tmpfs "$ROOT/dev/shm" && mounted+=("$ROOT/dev/shm")
  # edge's own cache (the integer LAB tables, ~1 min to build under emulation) lives on between runs
  mkdir -p "$CACHE/edge-cache" "$ROOT/root/.cache/edge-hemato"
  mount --bind "$CACHE/edge-cache" "$ROOT/root/.cache/edge-hemato" && mounted+=("$ROOT/root/.cache/edge-hemato")
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  if [ -n "${ARM64_KEEP:-}" ]; then
    log "root kept in $ROOT"
  elif ! grep -qs " $WORK" /proc/mounts; then  # never delete through a mount still in place
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT

# Run a command in the root, with a clean environment (the host's pip settings point at host paths).
in_root() {
  local env=(HOME=/root LANG=C.UTF-8 PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin PIP_DISABLE_PIP_VERSION_CHECK=1
    PIP_DEFAULT_TIMEOUT=180 PIP_ROOT_USER_ACTION=ignore QEMU_CPU="$CPU")
  local var
  for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!var:-}" ] && env+=("$var=${!var}")
  done
  [ -f "$ROOT/opt/host-ca.crt" ] && env+=(PIP_CERT=/opt/host-ca.crt SSL_CERT_FILE=/opt/host-ca.crt)
  chroot "$ROOT" /usr/bin/env -i "${env[@]}" "$@"
}

# A network that goes through a proxy with its own CA (as here): pip in the root needs the host's bundle.
host_ca() {
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/opt/host-ca.crt"
  fi
}

build_root() {
  log "debootstrap --arch=arm64 --variant=minbase $RELEASE (the second stage runs under emulation)"
  debootstrap --arch=arm64 --variant=minbase --include=$ROOT_PACKAGES "$RELEASE" "$ROOT" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
  mount_root
  host_ca
  log "python3 -m venv /opt/venv; pip install the device dependencies and pytest"
  in_root python3 -m venv /opt/venv
  # the dependencies of '.[device]' (read from pyproject.toml by the root's own Python), pytest, and
  # what builds the wheel (so each run builds it without downloading a build environment)
  cp pyproject.toml "$ROOT/opt/pyproject.toml"
  in_root python3 -c 'import tomllib; t = tomllib.load(open("/opt/pyproject.toml", "rb"))
p = t["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["device"] + t["build-system"]["requires"]))
print("pytest>=8\nwheel")' >"$ROOT/opt/requirements.txt"
  # byte-compiling every installed file under emulation takes minutes: only what is imported, below
  in_root pip install -q --no-compile -r /opt/requirements.txt
  in_root python -c 'import numpy, cv2, pydantic, click, flask, waitress, nacl, jinja2, paho.mqtt.client, pytest
import ai_edge_litert.interpreter, prometheus_client'
  rm -rf "$ROOT/root/.cache/pip"
  log "caching the root: $TARBALL"
  mkdir -p "$CACHE"
  tar -C "$ROOT" --one-file-system --exclude=./proc/* --exclude=./dev/* --exclude=./opt/host-ca.crt \
    --exclude=./root/.cache/edge-hemato/* -cf - . | zstd -q -T0 -3 -o "$TARBALL.tmp" && mv "$TARBALL.tmp" "$TARBALL"
}

host_packages
binfmt
mkdir -p "$ROOT"
if [ -f "$TARBALL" ]; then
  log "root from the cache: $TARBALL"
  zstd -q -d -c "$TARBALL" | tar -C "$ROOT" -xf -
  mount_root
  host_ca
else
  build_root
fi
[ "$(in_root uname -m)" = aarch64 ] || die "the root does not run as aarch64"
log "in the root: $(in_root python3 --version), $(in_root sh -c '. /etc/os-release; echo $PRETTY_NAME'), emulated CPU $CPU"

# --- this checkout, installed NON-editable ---------------------------------------------------------------
# What git tracks, with the working tree's changes (a fresh clone in CI: exactly HEAD); the source copy
# is removed after the install, so the tests import the installed package, as on a device.
log "copying the checkout and installing '.[device]' (a wheel, not editable)"
mkdir -p "$ROOT/opt/build" "$ROOT/opt/check"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$SRC" ls-files -z --cached --others --exclude-standard | tar -C "$SRC" --null -T - -cf - | tar -C "$ROOT/opt/build" -xf -
else
  tar -C "$SRC" --exclude=./.venv --exclude=./.venv-device --exclude=./runs -cf - . | tar -C "$ROOT/opt/build" -xf -
fi
in_root pip wheel -q --no-deps --no-build-isolation -w /opt/wheels /opt/build
wheel=$(cd "$ROOT/opt/wheels" && ls edge_hemato-*.whl | head -1)
in_root pip install -q --no-compile --force-reinstall --no-deps "/opt/wheels/$wheel"
in_root pip install -q --no-compile "/opt/wheels/$wheel[device]"  # what is new in the dependencies since the cache
# what the tests and doctor read: the tests, their fixtures, the committed bundles; no edge/ beside them
cp -a "$ROOT/opt/build/tests" "$ROOT/opt/build/models" "$ROOT/opt/build/pyproject.toml" "$ROOT/opt/check/"
rm -rf "$ROOT/opt/build"
where=$(in_root sh -c 'cd /opt/check && python -c "import edge; print(edge.__file__)"')
case "$where" in /opt/venv/*) log "edge imports from $where" ;; *) die "edge imports from $where, not the installed wheel" ;; esac

# --- the checks ------------------------------------------------------------------------------------------
failed=0
for bundle in "$ROOT"/opt/check/models/*/; do
  name=$(basename "$bundle")
  log "edge doctor models/$name"
  if ! in_root sh -c "cd /opt/check && edge doctor models/$name" >"$WORK/doctor-$name.txt" 2>&1; then
    failed=1
    cat "$WORK/doctor-$name.txt"
  fi
  grep -E "^ *(ok|warn|FAIL|info) +(bundle|golden)" "$WORK/doctor-$name.txt" || true
done
log "pytest ${TESTS[*]}"
in_root sh -c "cd /opt/check && python -m pytest -q -p no:cacheprovider ${TESTS[*]}" || failed=1
[ $failed = 0 ] || die "see above"
log "arm64: edge doctor on every bundle and the device tests passed"
