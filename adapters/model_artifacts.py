"""Model versions as shared artifacts: every worker, on any machine, can load any version.

The registry (``scoring_models``) is shared, so a version promoted on one machine is
"active" for workers everywhere; the files were only on the machine that trained it. Each
version's ``model.onnx`` and ``metadata.json`` (which carries its feature spec and
vocabularies) are therefore stored in PostgreSQL beside the registry, with a SHA-256 of
both; a machine's model directory is a cache of them. Loading a version fetches it when
the cache lacks it or holds different bytes, and checks the digest of what it wrote.

This module owns the ``model_artifacts`` table.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import structlog

from adapters.eventstore import ddl_lock
from adapters.modelstore import METADATA_FILE, MODEL_FILE

log = structlog.get_logger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS model_artifacts (
    version text PRIMARY KEY,
    sha256 text NOT NULL,
    onnx bytea NOT NULL,
    metadata bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
)
"""


class ArtifactError(RuntimeError):
    """A version's files cannot be had, or do not match their digest."""


def digest(onnx: bytes, metadata: bytes) -> str:
    """SHA-256 of a version's two files (each length-prefixed: no two splits collide)."""
    h = hashlib.sha256()
    for part in (onnx, metadata):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _local(folder: Path) -> tuple[bytes, bytes] | None:
    try:
        return (folder / MODEL_FILE).read_bytes(), (folder / METADATA_FILE).read_bytes()
    except OSError:
        return None


class ArtifactStore:
    def __init__(self, dsn: str, model_dir: Path) -> None:
        self.dsn = dsn
        self.model_dir = Path(model_dir)
        with ddl_lock(dsn), psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DDL)

    def publish(self, versions: list[str]) -> list[str]:
        """Store the local folders of ``versions`` the table lacks; returns those stored.

        A version already stored with other bytes keeps the stored ones (the first
        machine to publish a version name wins) and the difference is logged.
        """
        stored: list[str] = []
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            known = dict(
                conn.execute(
                    "SELECT version, sha256 FROM model_artifacts WHERE version = ANY(%s)",
                    (versions,),
                ).fetchall()
            )
            for version in versions:
                files = _local(self.model_dir / version)
                if files is None:
                    continue
                sha = digest(*files)
                if version in known:
                    if known[version] != sha:
                        log.warning("local model differs from the shared one", version=version)
                    continue
                conn.execute(
                    "INSERT INTO model_artifacts (version, sha256, onnx, metadata) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (version) DO NOTHING",
                    (version, sha, files[0], files[1]),
                )
                stored.append(version)
        return stored

    def ensure_local(self, version: str) -> Path:
        """The cache folder of ``version``, fetched from the shared store when the cache
        lacks it or differs from it. A version never published (trained before artifacts
        were shared) is used from the cache as it is."""
        folder = self.model_dir / version
        if Path(version).name != version or version.startswith("."):
            raise ArtifactError(f"{version!r} is not a model version name")
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT sha256, onnx, metadata FROM model_artifacts WHERE version = %s",
                (version,),
            ).fetchone()
        if row is None:
            return folder
        sha, onnx, metadata = row[0], bytes(row[1]), bytes(row[2])
        if digest(onnx, metadata) != sha:
            raise ArtifactError(f"model {version}: the stored files do not match their digest")
        files = _local(folder)
        if files is not None and digest(*files) == sha:
            return folder
        if files is not None:
            log.warning("cached model differs from the shared one: replaced", version=version)
        self._write(folder, onnx, metadata, sha)
        log.info("model fetched from the shared store", version=version)
        return folder

    def _write(self, folder: Path, onnx: bytes, metadata: bytes, sha: str) -> None:
        """Both files into a temporary sibling, checked, then moved in: all or nothing."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            tmp.chmod(0o755)
            (tmp / MODEL_FILE).write_bytes(onnx)
            (tmp / METADATA_FILE).write_bytes(metadata)
            written = _local(tmp)
            if written is None or digest(*written) != sha:
                raise ArtifactError(f"model {folder.name}: the written files do not match")
            if folder.is_symlink():
                folder.unlink()
            elif folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
