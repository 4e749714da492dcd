"""Rotating log files as Nomad's logmon writes them: ``<task>.stdout.0``, ``.1``, ...

Writing continues in the newest existing file. When a file reaches ``max_size`` bytes the next
index is opened, and files older than the newest ``max_files`` are deleted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MB = 1024 * 1024


class FileRotator:
    def __init__(self, directory: str | os.PathLike, base: str, max_files: int, max_size: int) -> None:
        self.dir = Path(directory)
        self.base = base  # e.g. "web.stdout"
        self.max_files = max(1, max_files)
        self.max_size = max(1, max_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        indexes = self.indexes()
        self.index = indexes[-1] if indexes else 0
        self._open()

    def indexes(self) -> list[int]:
        pattern = re.compile(re.escape(self.base) + r"\.(\d+)$")
        found = []
        for name in os.listdir(self.dir):
            m = pattern.match(name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def path(self, index: int) -> Path:
        return self.dir / f"{self.base}.{index}"

    def _open(self) -> None:
        self.file = open(self.path(self.index), "ab", buffering=0)
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self.max_size - self.size
            if room <= 0:
                self.rotate()
                continue
            chunk = view[:room]
            self.file.write(chunk)
            self.size += len(chunk)
            view = view[len(chunk):]

    def rotate(self) -> None:
        self.file.close()
        self.index += 1
        self._open()
        self.purge()

    def purge(self) -> None:
        for index in self.indexes():
            if index <= self.index - self.max_files:
                try:
                    os.unlink(self.path(index))
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        self.file.close()
