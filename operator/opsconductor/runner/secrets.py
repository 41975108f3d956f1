"""Secret values in the runner: reading them from mounted files and masking them in any output.

The runner never gets secret values in the plan; it reads them from files (Secret volumes) through a
:class:`FileSecretStore`, which remembers every value it handed out so that :meth:`FileSecretStore.mask`
can replace them with ``***`` wherever they show up: step output, error messages, logs, status.

What is remembered for one value:

- the value itself and the value without trailing whitespace (a file written with ``echo`` ends in a
  newline that the secret's users usually strip);
- each non-empty line of a multi-line value (a PEM private key printed line by line is masked line
  by line).

Fragments shorter than :data:`MIN_MASK_LENGTH` characters are not remembered: masking every ``a`` or
``10`` in the output would destroy it and reveal next to nothing. Masking replaces the longest
values first, so a value that contains another is masked as a whole.
"""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path

MIN_MASK_LENGTH = 3
MASK = "***"


class FileSecretStore:
    """Reads secret files and masks every value it has read (thread-safe).

    Implements ``opsconductor.runner.protocols.base.SecretStore``.
    """

    def __init__(self, min_length: int = MIN_MASK_LENGTH) -> None:
        """Create an empty store.

        Args:
            min_length: fragments shorter than this are not masked.
        """
        self._min_length = min_length
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def read(self, path: str) -> str:
        """Read a secret file as UTF-8 text and register its value for masking.

        Args:
            path: the file (e.g. ``/var/run/opsconductor/secrets/<secret>/<key>``).

        Returns:
            The file's content, trailing newline kept as is.

        Raises:
            OSError: the file cannot be read.
            UnicodeDecodeError: the content is not UTF-8 text (use :meth:`read_bytes`).
        """
        text = Path(path).read_text(encoding="utf-8")
        self.register(text)
        return text

    def read_bytes(self, path: str) -> bytes:
        """Read a secret file as bytes; registered for masking when it decodes as UTF-8.

        Args:
            path: the file.

        Returns:
            The raw content.

        Raises:
            OSError: the file cannot be read.
        """
        data = Path(path).read_bytes()
        # Binary content (a keytab, say) cannot show up in text output as such.
        with contextlib.suppress(UnicodeDecodeError):
            self.register(data.decode("utf-8"))
        return data

    def register(self, value: str) -> None:
        """Remember a secret value obtained some other way, so that :meth:`mask` hides it.

        Args:
            value: the secret; its lines are remembered too (see the module docstring).
        """
        fragments = {value, value.rstrip()}
        if "\n" in value or "\r" in value:
            fragments.update(line.strip() for line in value.splitlines())
        fragments = {f for f in fragments if len(f) >= self._min_length}
        with self._lock:
            if fragments <= self._values:
                return
            self._values |= fragments
            ordered = sorted(self._values, key=lambda v: (-len(v), v))
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def mask(self, text: str) -> str:
        """Replace every remembered secret value in ``text`` with ``***``.

        Args:
            text: any text meant for output.

        Returns:
            The text with secrets masked; longer values win over values they contain.
        """
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def __len__(self) -> int:
        """How many distinct fragments are masked."""
        return len(self._values)
