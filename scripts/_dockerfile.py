"""Just enough of a Dockerfile reader to check facts about its stages and to run a target's command.

Each stage knows its base, and what it has, itself or through its base stages: ENV, ENTRYPOINT, CMD,
USER, EXPOSE, VOLUME, HEALTHCHECK, and its RUN / COPY lines.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str | None = None
    expose: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    healthcheck: str | None = None
    runs: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _exec_form(value: str) -> list[str]:
    return json.loads(value) if value.startswith("[") else ["/bin/sh", "-c", value]


def read_stages(path: Path) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in _instructions(path.read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            base, name = (
                words[0],
                (words[2] if len(words) > 2 and words[1].upper() == "AS" else f"#{len(stages)}"),
            )
            current = Stage(name=name, base=base)
            parent = stages.get(base)
            if parent is not None:
                current.env = dict(parent.env)
                current.entrypoint, current.cmd, current.user = parent.entrypoint, parent.cmd, parent.user
                current.expose, current.volumes = list(parent.expose), list(parent.volumes)
                current.healthcheck = parent.healthcheck
                current.runs, current.copies = list(parent.runs), list(parent.copies)
            stages[name] = current
        elif current is None:
            continue
        elif keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                current.env[key] = value
        elif keyword == "ENTRYPOINT":
            current.entrypoint, current.cmd = _exec_form(rest), []
        elif keyword == "CMD":
            current.cmd = _exec_form(rest)
        elif keyword == "USER":
            current.user = rest
        elif keyword == "EXPOSE":
            current.expose += rest.split()
        elif keyword == "VOLUME":
            current.volumes += json.loads(rest) if rest.startswith("[") else rest.split()
        elif keyword == "HEALTHCHECK":
            current.healthcheck = rest
        elif keyword == "RUN":
            current.runs.append(rest)
        elif keyword == "COPY":
            current.copies.append(rest)
    return stages
