"""The operator's OCI image, built here without a Docker daemon and without a container registry.

`buildah` (Debian's package) builds the project's Dockerfile as it stands. Its base, which the Dockerfile takes
from the build argument PYTHON_IMAGE, is made from Debian's packages: `debootstrap` lays out a minimal Debian
with its python3, and a virtualenv on PATH gives the Dockerfile the `python` and `pip` it expects. The base is
cached in buildah's storage; RUN steps use chroot isolation (no runc, no user namespaces needed).

The check runs `tenantstore run --help` inside the image, lists its Python packages, and asserts that it runs as
a non-root user, has PostgreSQL 18's pg_dump for exports, and holds no dev harness (no tenantstore_dev, no pytest).

    python -m tenantstore_dev.image build    # base (once) and image; prints the image name
    python -m tenantstore_dev.image check    # what `make image` runs after the build
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
BASE = f"localhost/tenantstore-python-base:{SUITE}"
IMAGE = "localhost/tenantstore-operator:dev"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
# The image's own venv: on PATH, so the Dockerfile's `pip install` needs no --break-system-packages.
BASE_VENV = "/opt/python"
DEV_HARNESS = ("tenantstore_dev", "pytest", "pytest_asyncio")


class ImageError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def buildah(*args: str, capture: bool = False) -> str:
    """buildah with the vfs driver (no overlay mounts needed); its own errors are shown as they are."""
    command = ["buildah", "--storage-driver", "vfs", *args]
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise ImageError(f"{' '.join(command[:5])} ... failed with exit code {result.returncode}")
    return (result.stdout or "").strip()


def require_tools() -> None:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise ImageError(f"{', '.join(missing)} missing: `make image-tools` installs Debian's packages")


def debian_mirror() -> list[str]:
    """The Debian mirror this machine's apt uses (none: debootstrap's own default)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", sources.read_text(), re.MULTILINE)
        if found:
            return [found.group(1)]
    return []


def has_image(name: str) -> bool:
    return subprocess.run(["buildah", "--storage-driver", "vfs", "inspect", "--type", "image", name],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


@contextlib.contextmanager
def working_container(image: str) -> Iterator[str]:
    container = buildah("from", "--pull-never", image, capture=True)
    try:
        yield container
    finally:
        buildah("rm", container, capture=True)


def build_base() -> None:
    """A Debian base with python3 and a venv on PATH, from Debian's packages (once; kept in buildah's storage)."""
    if has_image(BASE):
        return
    say(f"making the base {BASE} with debootstrap (a few minutes, once)")
    with tempfile.TemporaryDirectory(prefix="tenantstore-base-") as work:
        rootfs = Path(work) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
                        str(rootfs), *debian_mirror()], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["chroot", str(rootfs), "python3", "-m", "venv", BASE_VENV], check=True)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tarball = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        container = buildah("from", "scratch", capture=True)
        try:
            buildah("add", container, str(tarball), "/")
            buildah("config", "--env", f"PATH={BASE_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                    "/sbin:/bin", "--env", "LANG=C.UTF-8", "--cmd", "python", container)
            buildah("commit", "--format", "oci", container, BASE, capture=True)
        finally:
            buildah("rm", container, capture=True)


def build() -> str:
    require_tools()
    build_base()
    say(f"building {IMAGE} from {ROOT / 'Dockerfile'}")
    # RUN steps trust what this machine trusts (a TLS-inspecting proxy's CA, say) when they fetch wheels; the
    # bundle is mounted for the build only and lands in no layer.
    trusted = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    volumes = ["--volume", f"{trusted}:/etc/ssl/certs/ca-certificates.crt:ro"] if Path(trusted).is_file() else []
    buildah("bud", "--isolation", "chroot", "--format", "oci", "--pull-never", "--layers=false", *volumes,
            "--build-arg", f"PYTHON_IMAGE={BASE}", "-t", IMAGE, "-f", str(ROOT / "Dockerfile"), str(ROOT))
    return IMAGE


def run_in(container: str, *command: str) -> str:
    return buildah("run", "--isolation", "chroot", container, "--", *command, capture=True)


def check(image: str = IMAGE) -> dict[str, object]:
    """What the image is: it starts the operator's CLI, runs as non-root, and holds no dev harness."""
    config = json.loads(buildah("inspect", "--type", "image", image, capture=True))
    user = config["OCIv1"]["config"].get("User", "")
    if not user or user.split(":")[0] in ("0", "root"):
        raise ImageError(f"the image runs as {user or 'root'}")
    with working_container(image) as container:
        usage = run_in(container, "tenantstore", "run", "--help")
        uid = run_in(container, "id", "-u")
        pg_dump = run_in(container, "sh", "-c", '"$TENANTSTORE_PG_BIN_DIR/pg_dump" --version')
        packages = json.loads(run_in(container, "python", "-m", "pip", "list", "--format", "json"))
        found = run_in(container, "python", "-c", "import importlib.util, sys; print(' '.join(n for n in "
                       f"{list(DEV_HARNESS)!r} if importlib.util.find_spec(n)))")
    if "usage: tenantstore run" not in usage:
        raise ImageError(f"`tenantstore run --help` printed no usage:\n{usage[:500]}")
    if "(PostgreSQL) 18" not in pg_dump:
        raise ImageError(f"the image's pg_dump (exports) is not PostgreSQL 18's: {pg_dump}")
    if uid == "0":
        raise ImageError("a command in the image ran as root")
    if found:
        raise ImageError(f"the image holds the dev harness: {found}")
    names = {re.sub(r"[-_.]+", "-", package["name"]).lower(): package["version"] for package in packages}
    for required in ("tenantstore-operator", "kopf", "psycopg", "pinecone", "prometheus-client", "opentelemetry-sdk"):
        if required not in names:
            raise ImageError(f"{required} is not installed in the image")
    return {"image": image, "user": user, "uid": uid, "pg_dump": pg_dump, "packages": names}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantstore_dev.image", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "check"))
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build())
        else:
            found = check()
            print(f"{found['image']}: runs as {found['user']} (uid {found['uid']}); `tenantstore run --help` "
                  f"answers; {found['pg_dump']}; no dev harness; "
                  f"{len(found['packages'])} Python packages:")  # type: ignore[arg-type]
            for name, version in sorted(found["packages"].items()):  # type: ignore[union-attr]
                print(f"  {name} {version}")
    except (ImageError, subprocess.CalledProcessError) as error:
        say(str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
