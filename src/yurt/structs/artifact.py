"""Artifact sources as go-getter reads them (pure: no I/O), for validation and the client's artifact hook."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .task import TaskArtifact

CHECKSUM_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
MODES = ("any", "file", "dir")
ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip", ".gz", ".bz2", ".xz")
GIT_OPTIONS = ("ref", "depth", "sshkey")


@dataclass
class Source:
    """A parsed getter source: its getter, its URL without go-getter's own query parameters."""
    getter: str                 # "http" | "file" | "git"
    url: str
    checksum: tuple[str, str] | None   # (type, hex)
    archive: str | None         # an archive type, or None: keep the file as it is
    git: dict[str, str]


def parse_checksum(value: str) -> tuple[str, str]:
    """``type:hex`` (or a bare hex, its type guessed by length, as go-getter): ValueError if malformed."""
    kind, sep, digest = value.partition(":")
    if not sep:
        kind, digest = "", value
        for k, n in CHECKSUM_LENGTHS.items():
            if len(value) == n:
                kind = k
        if not kind:
            raise ValueError(f'checksum "{value}" has no type: write it like "sha256:<64 hex digits>"')
    kind = kind.lower()
    if kind not in CHECKSUM_LENGTHS:
        raise ValueError(f'checksum type "{kind}" is not known: use md5, sha1, sha256 or sha512')
    want = CHECKSUM_LENGTHS[kind]
    if len(digest) != want or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise ValueError(f'{kind} checksum "{digest}" is not {want} hex digits')
    return kind, digest.lower()


def _archive_type(path: str) -> str | None:
    name = path.lower()
    for ext in ARCHIVES:
        if name.endswith(ext):
            return ext.lstrip(".")
    return None


def parse_source(source: str, options: dict[str, str] | None = None) -> Source:
    """go-getter's reading of ``source`` with the artifact's ``options`` merged into its query."""
    raw = source.strip()
    forced = ""
    m = re.match(r"^([a-z0-9]+)::(.*)$", raw)
    if m:
        forced, raw = m.group(1), m.group(2)
    elif raw.startswith("github.com/"):
        forced, raw = "git", "https://" + raw
    elif raw.startswith("git@"):
        forced = "git"
    if forced and forced not in ("git", "http", "https", "file"):
        raise ValueError(f'the "{forced}::" getter is not supported by Yurt: use http(s)://, file:// or git::')
    if forced == "git" and raw.startswith("git@"):   # scp-like ssh: no query parsing beyond ?ref
        base, _, qs = raw.partition("?")
        parts = urlsplit("ssh://x/?" + qs)
        scheme, query = "git-ssh", parse_qsl(parts.query, keep_blank_values=True)
        head = base
    else:
        parts = urlsplit(raw)
        scheme = parts.scheme.lower()
        query = parse_qsl(parts.query, keep_blank_values=True)
        head = ""
        if not scheme:
            raise ValueError(f'artifact source "{source}" has no scheme: use http(s)://..., file:///... or git::...')
    q = dict(query)
    for k, v in (options or {}).items():
        q[k] = v
    getter = "git" if forced == "git" else ("http" if scheme in ("http", "https") else scheme)
    if getter not in ("http", "file", "git"):
        raise ValueError(f'artifact source scheme "{scheme}" is not supported by Yurt: use http(s)://, '
                         'file:// or git::')
    checksum = None
    if q.get("checksum"):
        checksum = parse_checksum(q.pop("checksum"))
    else:
        q.pop("checksum", None)
    archive_opt = q.pop("archive", None)
    git: dict[str, str] = {}
    if getter == "git":
        for k in GIT_OPTIONS:
            if k in q:
                git[k] = q.pop(k)
        if git.get("depth") and not git["depth"].isdigit():
            raise ValueError(f'git depth "{git["depth"]}" is not a number')
        if "sshkey" in git:
            raise ValueError("the git sshkey option is not supported by Yurt yet: use an https or file URL")
        if checksum is not None:
            raise ValueError("a checksum applies to a downloaded file, not to a git repository: remove it")
    if head:
        url = head + (("?" + urlencode(q)) if q else "")
    else:
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(q), parts.fragment))
    archive: str | None = None
    if getter != "git" and (archive_opt or "true").lower() not in ("false", "0"):
        if archive_opt and archive_opt.lower() not in ("true", "1"):
            archive = _archive_type("." + archive_opt)
            if archive is None:
                raise ValueError(f'archive "{archive_opt}" is not a type Yurt unpacks: use tar.gz, tgz, tar, '
                                 'zip, gz, or false')
        else:
            archive = _archive_type(parts.path.rsplit("/", 1)[-1])
    return Source(getter, url, checksum, archive, git)


def artifact_problems(a: TaskArtifact) -> list[tuple[tuple[str, ...], str]]:
    """What is wrong with an artifact block, for validation: (field path, message)."""
    out: list[tuple[tuple[str, ...], str]] = []
    if not a.getter_source:
        out.append((("GetterSource",), 'artifact has no source: set source, like "https://example.com/app.tar.gz"'))
    elif "${" not in a.getter_source and not any("${" in v for v in (a.getter_options or {}).values()):
        try:
            parse_source(a.getter_source, a.getter_options)
        except ValueError as e:
            key = "GetterOptions" if "checksum" in str(e) and (a.getter_options or {}).get("checksum") \
                else "GetterSource"
            out.append(((key,), str(e)))
    if a.getter_mode and a.getter_mode not in MODES:
        out.append((("GetterMode",), f'artifact mode "{a.getter_mode}" is not known: use any, file or dir'))
    dest = a.relative_dest
    if dest and posixpath.normpath(posixpath.join("task", dest.lstrip("/"))).startswith(".."):
        out.append((("RelativeDest",), f'artifact destination "{dest}" escapes the allocation directory: use a '
                                       'path inside the task directory, like "local/app"'))
    return out
