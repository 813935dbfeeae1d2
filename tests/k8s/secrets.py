"""Stand-ins for the Secrets that components/secure mounts (they are made outside the manifests).

`ssl_config` builds the SSLConfig text with the component's own `ssl-config.sh`, from a CA and a
server certificate for localhost made with openssl (tests/serving/test_tls.py), so the documented
command is what the tests run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.k8s.manifests import K8S
from tests.serving.test_tls import make_certificates

SSL_CONFIG_SCRIPT = K8S / "components" / "secure" / "ssl-config.sh"
TOKEN = "k8s-test-token-0123456789abcdef"


def ssl_config(folder: Path, client_verify: bool = False) -> str:
    """SSLConfig text for a fresh localhost certificate under `folder` (made once per folder)."""
    if not (folder / "server.pem").exists():
        make_certificates(folder)
    extra = ["--client-verify"] if client_verify else []
    result = subprocess.run(
        ["sh", str(SSL_CONFIG_SCRIPT), "server.key", "server.pem", "ca.pem", *extra],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def secure_stand_ins(folder: Path) -> dict[str, str]:
    """{server flag: file content} for the two Secret-backed flags."""
    return {"ssl_config_file": ssl_config(folder), "auth_token_file": f"# rotated monthly\n{TOKEN}\n"}
