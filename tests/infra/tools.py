"""The offline infrastructure tools the infra tests run: terraform with a local provider
mirror, checkov (its own venv) and promtool. A missing tool fails the test with what to
install; nothing here skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.settings import ROOT

TERRAFORM_DIR = ROOT / "infra" / "terraform"
OBSERVABILITY_DIR = ROOT / "infra" / "observability"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"

AWS_PROVIDER = Path("registry.terraform.io") / "hashicorp" / "aws"
# Where images of this kind keep a filesystem mirror; LEADSCORE_TF_PROVIDER_MIRROR wins.
MIRROR_ROOTS = (
    Path("/opt/tf-plugins"),
    Path("/opt/terraform/plugins"),
    Path("/usr/local/share/terraform/plugins"),
    Path("/usr/share/terraform/plugins"),
    Path.home() / ".terraform.d" / "plugins",
    Path.home() / ".local" / "share" / "terraform" / "plugins",
)


def terraform_binary() -> str:
    override = os.environ.get("LEADSCORE_TERRAFORM")
    found = override if override and Path(override).is_file() else None
    if not override:
        found = shutil.which("terraform")
        if not found and Path("/usr/local/bin/terraform").is_file():
            found = "/usr/local/bin/terraform"
    if not found:
        pytest.fail(
            "terraform is not installed: the infra tests need terraform >= 1.11 on PATH "
            "(or LEADSCORE_TERRAFORM=/path/to/terraform)",
            pytrace=False,
        )
    return found


def provider_mirror() -> Path:
    """The folder that holds registry.terraform.io/hashicorp/aws."""
    override = os.environ.get("LEADSCORE_TF_PROVIDER_MIRROR")
    candidates = [Path(override)] if override else list(MIRROR_ROOTS)
    for root in candidates:
        if (root / AWS_PROVIDER).is_dir():
            return root
    where = override or ", ".join(str(r) for r in MIRROR_ROOTS)
    pytest.fail(
        f"no filesystem mirror of the AWS provider (a folder holding {AWS_PROVIDER}) in "
        f"{where}; set LEADSCORE_TF_PROVIDER_MIRROR to the folder that holds it",
        pytrace=False,
    )


@dataclass(frozen=True)
class Terraform:
    """terraform in a private copy of infra/terraform, installing providers from the mirror only."""

    binary: str
    workdir: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args, "-no-color"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def terraform_in(tmp: Path) -> Terraform:
    binary = terraform_binary()
    mirror = provider_mirror()
    config = tmp / "terraform.rc"
    config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/*/*"]\n  }\n'
        '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n}\n'
    )
    workdir = tmp / "terraform"
    shutil.copytree(
        TERRAFORM_DIR, workdir, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*")
    )
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(config),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
    }
    env.pop("TF_DATA_DIR", None)
    return Terraform(binary, workdir, env)


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail(
            "promtool is not installed: `make tools` installs it (Debian package prometheus)",
            pytrace=False,
        )
    return found


def checkov() -> Path:
    if not CHECKOV.exists():
        pytest.fail(
            f"checkov is not installed at {CHECKOV}: `make tools` creates .venv-tools with it",
            pytrace=False,
        )
    return CHECKOV
