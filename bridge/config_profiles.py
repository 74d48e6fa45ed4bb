"""Device profiles: the register map of one device model, named instead of written.

A profile is a YAML file `<maker>/<model>.yaml` (the name is ``maker/model``): the keys
of a template (`byte_order`, `word_order`, `points`) and a header: `manufacturer`,
`model`, `kind` (one of `vocabulary.KINDS`) and `source`, the manufacturer's document
it was taken from (`title`, and its `version` or `date`; `url` optional).

Where profiles are found (`find_profiles`): the configuration's `profiles:` folders, in
the order given, then the ones shipped in `bridge/profiles/`. The first folder that
holds a name wins, so a user's file replaces a built-in profile of the same name.

A profile is read by the configuration's own node reader (`ProfileReader.profile`):
every problem in it is reported at its line and column in the profile's file, with the
same rules as a point written in the configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from bridge.config_nodes import Fields, Node, compose, is_null, show, suggest
from bridge.config_points import DEFAULT_INTERVAL, PointReader, PointSpec, resolve
from bridge.errors import ConfigError, Problem
from bridge.model import MAX_READ, Order, Point
from bridge.vocabulary import KINDS

BUILTIN = Path(__file__).parent / "profiles"
"""The profiles shipped with the bridge (package data)."""

PROFILE_KEYS = (
    "manufacturer", "model", "kind", "source", "byte_order", "word_order", "max_read",
    "points",
)  # fmt: skip
SOURCE_KEYS = ("title", "version", "date", "url")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*")


class _Base(Protocol):
    """What a device or template starts from: a template, or a profile made one."""

    @property
    def points(self) -> Sequence[PointSpec]: ...


@dataclass(frozen=True)
class Source:
    """The manufacturer's document a profile was taken from."""

    title: str
    version: str | None = None
    date: str | None = None
    url: str | None = None

    def describe(self) -> str:
        edition = "; ".join(x for x in (self.version, self.date) if x)
        return f"{self.title}; {edition}" if edition else self.title


@dataclass(frozen=True)
class Profile:
    """One profile as read: its header and its points (resolved per device)."""

    name: str  # maker/model
    path: str
    manufacturer: str
    model: str
    kind: str
    source: Source
    byte_order: Order | None
    word_order: Order | None
    points: tuple[PointSpec, ...]
    max_read: int | None = None  # registers per read request, when the device takes fewer

    @property
    def builtin(self) -> bool:
        return Path(self.path).parent.parent == BUILTIN


def find_profiles(folders: Sequence[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """Profile name -> its file: `folders` in order, then the built-in ones; the first
    that holds a name wins. Names in sorted order."""
    found: dict[str, str] = {}
    for folder in [*folders, BUILTIN]:
        for path in sorted(Path(folder).glob("*/*.yaml")):
            found.setdefault(f"{path.parent.name}/{path.stem}", str(path))
    return dict(sorted(found.items()))


class ProfileReader(PointReader):
    """Reads profile files with the reader of the configuration that names them."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        super().__init__(source, env)
        self.profile_folders: list[str] = []
        self._catalog: dict[str, str] | None = None
        self._profiles: dict[str, Profile | None] = {}
        # The node trees read: the reader caches by node id, so they must stay alive.
        self._trees: list[Node] = []
        self.dropped: dict[str, tuple[Node, str]] = {}  # by the last `merged`

    def catalog(self) -> dict[str, str]:
        if self._catalog is None:
            self._catalog = find_profiles(self.profile_folders)
        return self._catalog

    def named_profile(self, f: Fields) -> Profile | None:
        """The profile a device or template names with `profile:`, read once; an unknown
        name is reported there. None when none is named or it cannot be used."""
        name = self.get(f, "profile", self.text)
        if name is None:
            return None
        catalog = self.catalog()
        path = catalog.get(name)
        if path is None:
            hint = suggest(name, catalog) or (
                "" if NAME_RE.fullmatch(name) else " (a profile is named maker/model)"
            )
            where = f", and in {', '.join(self.profile_folders)}" if self.profile_folders else ""
            self.report(
                f.value("profile"),
                f.sub("profile"),
                f"unknown profile {show(name)}{hint}; `modbus-bridge profiles` lists the"
                f" built-in ones{where}",
            )
            return None
        if name not in self._profiles:
            self._profiles[name] = self.profile(name, path)
        profile = self._profiles[name]
        if profile is None:
            self.report(
                f.value("profile"), f.sub("profile"), f"profile {show(name)} has problems ({path})"
            )
        return profile

    def profile(self, name: str, path: str) -> Profile | None:
        """Read the profile file `path`; its problems are reported in that file."""
        saved = self.source
        self.source = path
        before = len(self.problems)
        try:
            try:
                with open(path, encoding="utf-8-sig") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
                self.report(None, "", f"cannot read profile: {reason or exc}")
                return None
            try:
                node = compose(text, path)
            except ConfigError as exc:
                for problem in exc.problems:
                    self.problems.append(problem)
                return None
            if node is None or is_null(node):
                self.report(node, "", "the profile is empty")
                return None
            self._trees.append(node)
            profile = self._profile(node, name, path)
            return None if len(self.problems) > before else profile
        finally:
            self.source = saved

    def _profile(self, node: Node, name: str, path: str) -> Profile | None:
        f = self.mapping(node, "", PROFILE_KEYS)
        if f is None:
            return None
        manufacturer = self.req(f, "manufacturer", self.nonempty_text)
        model = self.req(f, "model", self.nonempty_text)
        kind = self.req(f, "kind", self.text)
        if kind is not None and kind not in KINDS:
            hint = suggest(kind, KINDS) or f" (one of {', '.join(KINDS)})"
            self.report(f.value("kind"), f.sub("kind"), f"unknown kind {show(kind)}{hint}")
        source = self.req(f, "source", self.source_document)
        byte_order = self.get(f, "byte_order", self.choice(Order, "byte order"))
        word_order = self.get(f, "word_order", self.choice(Order, "word order"))
        max_read = self.get(f, "max_read", self.int_in(1, MAX_READ))
        points_node = self.req(f, "points", lambda n, _p: n)
        specs, written = ([], 0) if points_node is None else self.points(points_node, f)
        if points_node is not None and written == 0:
            self.report(points_node, "points", "a profile needs at least one point")
        if manufacturer is None or model is None or kind is None or source is None:
            return None
        return Profile(
            name=name,
            path=path,
            manufacturer=manufacturer,
            model=model,
            kind=kind,
            source=source,
            byte_order=byte_order,
            word_order=word_order,
            points=tuple(specs),
            max_read=max_read,
        )

    def source_document(self, node: Node, path: str) -> Source | None:
        f = self.mapping(node, path, SOURCE_KEYS)
        if f is None:
            return None
        title = self.req(f, "title", self.nonempty_text)
        version = self.get(f, "version", self.nonempty_text)
        date = self.get(f, "date", self.nonempty_text)
        url = self.get(f, "url", self.nonempty_text)
        if version is None and date is None and not (f.has("version") or f.has("date")):
            self.report(node, path, "the document needs its version or its date")
            return None
        if title is None:
            return None
        return Source(title=title, version=version, date=date, url=url)

    def folders(self, root: Fields) -> list[str]:
        """The `profiles:` folders, as absolute paths (relative ones from the
        configuration file's folder); each must be a folder."""
        nodes = self.get(root, "profiles", self.sequence)
        folders: list[str] = []
        for i, node in enumerate(nodes or ()):
            path = f"profiles[{i}]"
            text = self.nonempty_text(node, path)
            if text is None:
                continue
            folder = os.path.join(self.base_dir, os.path.expanduser(text))
            if not os.path.isdir(folder):
                why = "does not exist" if not os.path.exists(folder) else "is not a folder"
                self.report(node, path, f"profile folder {show(text)} {why}")
                continue
            folders.append(folder)
        return folders

    def merged(
        self, f: Fields, base: _Base | None, own: Sequence[PointSpec]
    ) -> dict[str, PointSpec]:
        """The points of a template or device: its base's (template or profile), less
        the names in `drop`, then its own (one named like a base point replaces it)."""
        specs: dict[str, PointSpec] = {}
        if base is not None:
            specs.update((s.name, s) for s in base.points)
        self.dropped = {}
        nodes = self.get(f, "drop", self.sequence)
        for i, node in enumerate(nodes or ()):
            path = f"{f.sub('drop')}[{i}]"
            name = self.text(node, path)
            if name is None:
                continue
            if base is None:
                self.report(
                    node, path, "drop removes points of a template or profile; there is none"
                )
                break
            if specs.pop(name, None) is None:
                hint = suggest(name, [s.name for s in base.points]) or ""
                self.report(node, path, f"no point {show(name)} to drop{hint}")
            else:
                self.dropped[name] = (node, path)
        specs.update((s.name, s) for s in own)  # a point of its own replaces the base's
        return specs


# -- `modbus-bridge profiles`: every profile read, and what one holds


def load_profiles(
    folders: Sequence[str | os.PathLike[str]] = (),
) -> tuple[list[Profile], list[Problem]]:
    """Every profile found (`find_profiles`), read; the problems of those that fail."""
    reader = ProfileReader("<profiles>", {})
    reader.profile_folders = [os.fspath(f) for f in folders]
    profiles = []
    for name, path in reader.catalog().items():
        profile = reader.profile(name, path)
        if profile is not None:
            profiles.append(profile)
    return profiles, reader.sorted_problems()


def profile_points(profile: Profile) -> tuple[Point, ...]:
    """The points of a profile as a device that names it and adds nothing gets them."""
    inherited = {
        "interval": DEFAULT_INTERVAL,
        "byte_order": profile.byte_order or Order.BIG,
        "word_order": profile.word_order or Order.BIG,
    }
    return tuple(resolve(spec, inherited) for spec in profile.points)


def header_doc(profile: Profile) -> dict[str, Any]:
    """A profile's header as JSON (`profiles --json`)."""
    source = {k: v for k, v in asdict(profile.source).items() if v is not None}
    return {
        "name": profile.name,
        "kind": profile.kind,
        "manufacturer": profile.manufacturer,
        "model": profile.model,
        "source": source,
        "file": profile.path,
        "builtin": profile.builtin,
        "max_read": profile.max_read,
    }


def point_doc(p: Point) -> dict[str, Any]:
    """A point as JSON (`profiles show --json`): the keys a profile gives, defaults left out."""
    doc: dict[str, Any] = {
        "name": p.name,
        "table": p.table.value,
        "address": p.address,
        "type": p.type.value,
    }
    if p.type.width == 0:
        doc["length"] = p.length
    if p.byte_order is not Order.BIG:
        doc["byte_order"] = p.byte_order.value
    if p.word_order is not Order.BIG and p.type.width > 1:
        doc["word_order"] = p.word_order.value
    for key, value, default in (
        ("bit", p.bit, None),
        ("scale", p.scale, 1.0),
        ("offset", p.offset, 0.0),
        ("scale_factor", p.scale_factor, None),
        ("unit", p.unit, None),
        ("device_class", p.device_class, None),
        ("state_class", p.state_class and p.state_class.value, None),
        ("entity_category", p.entity_category and p.entity_category.value, None),
    ):
        if value != default:
            doc[key] = value
    if p.values:
        doc["values"] = {str(raw): label for raw, label in p.values}
    doc["writable"] = p.writable
    return doc
