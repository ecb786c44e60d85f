"""Where published versions go: a Hub repository, or a folder for `--dry-run`.

The Hub side is a handful of `huggingface_hub` calls and nothing else:

- `HfApi.repo_exists` / `HfApi.list_repo_refs` / `HfApi.list_repo_files`: what is published;
- `HfApi.create_repo(..., exist_ok=True)`: the repository, on the first upload;
- `HfApi.create_commit` with `CommitOperationAdd`s: one commit per version (data, card, config
  and stats together), on top of the `main` commit that was checked (`parent_commit`);
- `HfApi.create_tag`: the version's tag, on that commit, never moved.

The token is whatever `huggingface_hub` finds (`HF_TOKEN`, or `hf auth login`); it is handed to
`HfApi` and never printed, logged or written.

A `DryRunFolder` takes the same calls and writes the repository's files into a folder instead
(`<out>/<datasets|models>/<org>/<name>/`), with its tags in `<out>/refs/...json` beside it,
so a dry run shows exactly what a push would upload.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from selflengthen.atomic import copy_file_atomic, write_json_atomic
from selflengthen.errors import SelflengthenError
from selflengthen.tables import file_sha256, remove_temporaries


def check_repo_id(repo_id: str, flag: str = "--repo") -> str:
    """An `org/name` id the Hub accepts, or a one-line error naming `flag`."""
    if repo_id.count("/") != 1:
        raise SelflengthenError(f"{flag}: expected ORG/NAME, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise SelflengthenError(f"{flag}: {repo_id!r} is not a valid repo id ({error})") from None
    return repo_id


def hub_token() -> str:
    """The user's token (environment or login), or a one-line error. Never shown."""
    token = get_token()
    if not token:
        raise SelflengthenError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run --out DIR)"
        )
    return token


class Destination(Protocol):
    """One repository, as the publisher sees it."""

    repo_id: str
    repo_type: str  # "dataset" or "model"

    def tags(self) -> set[str]: ...

    def files(self) -> set[str]: ...

    def commit(self, files: dict[str, Path], message: str) -> str: ...

    def tag(self, tag: str, revision: str, message: str) -> None: ...

    def describe(self) -> str: ...


def _hub_error(repo_id: str, action: str, error: HfHubHTTPError) -> SelflengthenError:
    status = error.response.status_code if error.response is not None else "no response"
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return SelflengthenError(f"{repo_id}: {action} failed (HTTP {status}): {first_line}")


@dataclass
class HubRepo:
    """A repository on the Hub."""

    api: HfApi
    repo_id: str
    repo_type: str
    private: bool = False
    _main: str | None = None  # the commit `files()` saw; commits go on top of it

    def describe(self) -> str:
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"https://huggingface.co/{prefix}{self.repo_id}"

    def _exists(self) -> bool:
        try:
            return self.api.repo_exists(self.repo_id, repo_type=self.repo_type)
        except HfHubHTTPError as error:
            raise _hub_error(self.repo_id, "checking the repository", error) from None

    def tags(self) -> set[str]:
        if not self._exists():
            return set()
        try:
            refs = self.api.list_repo_refs(self.repo_id, repo_type=self.repo_type)
        except HfHubHTTPError as error:
            raise _hub_error(self.repo_id, "listing tags", error) from None
        self._main = next((branch.target_commit for branch in refs.branches if branch.name == "main"), None)
        return {tag.name for tag in refs.tags}

    def files(self) -> set[str]:
        if not self._exists():
            return set()
        try:
            return set(self.api.list_repo_files(self.repo_id, repo_type=self.repo_type, revision="main"))
        except HfHubHTTPError as error:
            raise _hub_error(self.repo_id, "listing files", error) from None

    def commit(self, files: dict[str, Path], message: str) -> str:
        operations = [CommitOperationAdd(path, str(local)) for path, local in sorted(files.items())]
        try:
            self.api.create_repo(self.repo_id, repo_type=self.repo_type, private=self.private, exist_ok=True)
            info = self.api.create_commit(
                self.repo_id,
                operations,
                commit_message=message,
                repo_type=self.repo_type,
                parent_commit=self._main,
            )
        except HfHubHTTPError as error:
            raise _hub_error(self.repo_id, "uploading", error) from None
        self._main = info.oid
        return info.oid

    def tag(self, tag: str, revision: str, message: str) -> None:
        try:
            self.api.create_tag(
                self.repo_id, tag=tag, revision=revision, tag_message=message, repo_type=self.repo_type
            )
        except HfHubHTTPError as error:
            raise _hub_error(self.repo_id, f"creating tag {tag}", error) from None


@dataclass
class DryRunFolder:
    """A folder standing in for a repository: `root` holds the files a push would leave on
    `main`; `refs` (outside `root`) records each tag with the files of its commit."""

    out: Path
    repo_id: str
    repo_type: str
    _pending: dict[str, object] = field(default_factory=dict)  # the last commit, until tagged

    @property
    def root(self) -> Path:
        return self.out / f"{self.repo_type}s" / self.repo_id

    @property
    def refs(self) -> Path:
        return self.out / "refs" / f"{self.repo_type}s" / f"{self.repo_id}.json"

    def describe(self) -> str:
        return str(self.root)

    def _refs(self) -> dict[str, dict[str, object]]:
        return json.loads(self.refs.read_text()) if self.refs.is_file() else {}

    def tags(self) -> set[str]:
        return set(self._refs())

    def files(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file()}

    def commit(self, files: dict[str, Path], message: str) -> str:
        """Copy each file into place (temporary file, then rename); the commit id is the hash of
        the file list, like a tree hash. The temporary files of a publish killed earlier go first:
        the folder holds exactly the repository's files."""
        for folder in (self.root, self.refs.parent):
            if folder.is_dir():
                remove_temporaries(folder)
        manifest = {}
        for path, local in sorted(files.items()):
            copy_file_atomic(local, self.root / path)
            manifest[path] = file_sha256(self.root / path)
        self._pending = {"message": message, "files": manifest}
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    def tag(self, tag: str, revision: str, message: str) -> None:
        refs = self._refs()
        refs[tag] = {"commit": revision, "tag_message": message, **self._pending}
        write_json_atomic(refs, self.refs)
