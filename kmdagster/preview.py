"""Preview what a source would import, and apply the setup rule, without writing anything.

Reads the whole file with the import's own chunk reader and split, so memory stays
bounded and the numbers are exactly what the import would load.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from kmdagster.config import SourceConfig
from kmdagster.km_format.split import split_km_lines
from kmdagster.km_format.summary import KnownNames, PreviewAccumulator, PreviewSummary
from kmdagster.s3.objects import (
    FilePattern,
    S3File,
    compression_of,
    head_file,
    list_root_files,
)
from kmdagster.s3.piece_reader import PIECE_BYTES, PieceReader, UnreadableFileError
from kmdagster.wording import counted, names_and_more


class SetupRuleError(RuntimeError):
    """The bucket holds no matching file with at least one valid line. ``preview`` is the
    first file's, when it was read: its reject reasons say what to fix."""

    def __init__(self, message: str, preview: FilePreview | None = None) -> None:
        super().__init__(message)
        self.preview = preview


@dataclass(frozen=True)
class FilePreview:
    bucket: str
    file: S3File
    summary: PreviewSummary

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "file": self.file.key,
            "etag": self.file.etag,
            "size_bytes": self.file.size,
            "compression": compression_of(self.file.key),
            **self.summary.to_dict(),
        }


def preview_file(
    client: Any,
    bucket: str,
    file: S3File,
    chunk_bytes: int,
    known_names: KnownNames | None = None,
    stop_at_first_valid_line: bool = False,
    repair_octal: bool = False,
    max_uncompressed_bytes: int | None = None,
) -> FilePreview:
    """Summarise the whole of one file version (or up to its first valid line)."""
    accumulator = PreviewAccumulator()
    offset = 0
    piece_bytes = min(chunk_bytes, PIECE_BYTES)  # the split's memory is ~20x its input
    compression = compression_of(file.key)
    with PieceReader(
        client,
        bucket,
        file.key,
        file.etag,
        file.size,
        piece_bytes,
        compression=compression,
        max_uncompressed_bytes=max_uncompressed_bytes,
    ) as reader:
        last = False
        while not last:
            piece = reader.read_piece(offset)
            last = piece.last
            split = split_km_lines(
                piece.data,
                accumulator.lines + 1,
                int(time.time()),
                with_sent_names=True,
                first_byte_offset=piece.end - len(piece.data),
                repair_octal=repair_octal,
            )
            accumulator.add(split)
            offset = piece.end
            if stop_at_first_valid_line and accumulator.valid_lines:
                break
    return FilePreview(bucket=bucket, file=file, summary=accumulator.summary(known_names))


def setup_preview(
    client: Any,
    source: SourceConfig,
    known_names: KnownNames | None = None,
    key: str | None = None,
    set_aside: Collection[str] = (),
) -> FilePreview:
    """The preview of the first pending file (or ``key``), enforcing KISSmetrics' rule.

    The first pending file is the first matching key at the root that is not quarantined
    (``set_aside``) and can be read; a quarantined or unreadable file passed over is named
    in the preview's warnings. Setup needs at least one matching file with a valid line.
    When the first file has none, the later files are scanned (each only up to its first
    valid line) so the message can say which file would be the first to load anything.
    """
    pattern = FilePattern.of_source(source)
    matching = f"s3://{source.bucket}/{pattern.describe()}"
    where = matching
    if source.start_after is not None:
        where += f" after start_after {source.start_after!r}"
    notes: list[str] = []
    if key is not None:
        if not pattern.matches(key):
            raise SetupRuleError(
                f"{key!r} is not a root-level key matching {matching}; pick one that matches"
            )
        if not source.after_start(key):
            raise SetupRuleError(
                f"{key!r} sorts at or before the source's start_after {source.start_after!r}, "
                "so it is never imported; pick a later key"
            )
        file = head_file(client, source.bucket, key)
        if file is None:
            raise SetupRuleError(f"s3://{source.bucket}/{key} does not exist")
        files = [file]
    else:
        listed = list_root_files(client, source)
        files = [file for file in listed if file.key not in set_aside]
        passed_over = [file.key for file in listed if file.key in set_aside]
        if passed_over:
            notes.append(
                f"passed over {counted(len(passed_over), 'quarantined file')} "
                f"({names_and_more(passed_over, 5)}): `kmdagster status {source.name}` "
                "says why"
            )
    if not files:
        raise SetupRuleError(
            f"no file matches {where}: upload at least one file of KISSmetrics JSON lines "
            f"named like {source.base_filename} to the root of bucket {source.bucket!r}"
            if not notes
            else f"no file of {where} but quarantined ones: {notes[0]}"
        )
    options = (source.repair_octal_escapes, source.max_uncompressed_bytes)
    preview = None
    while files:
        try:
            preview = preview_file(
                client, source.bucket, files[0], source.chunk_bytes, known_names, False, *options
            )
            break
        except UnreadableFileError as exc:
            if key is not None:
                raise SetupRuleError(str(exc)) from exc
            notes.append(f"passed over {files[0].key}, which cannot be read: {exc}")
            files = files[1:]
    if preview is None:
        raise SetupRuleError(f"no file of {where} can be read: " + "; ".join(notes))
    if notes:
        warnings = [*notes, *preview.summary.warnings]
        preview = replace(preview, summary=replace(preview.summary, warnings=warnings))
    if preview.summary.valid_lines:
        return preview
    for later in files[1:]:
        try:
            probe = preview_file(
                client, source.bucket, later, source.chunk_bytes, None, True, *options
            )
        except UnreadableFileError:
            continue
        if probe.summary.valid_lines:
            note = (
                f"{files[0].key} has no valid line (all {preview.summary.rejected_lines} "
                f"non-blank lines are rejected); {later.key} is the first file with one"
            )
            warnings = [note, *preview.summary.warnings]
            return replace(preview, summary=replace(preview.summary, warnings=warnings))
    if key is not None:
        scope, reasons = f"s3://{source.bucket}/{key}", "its reject reasons are in the preview"
    else:
        scope = f"any of the {counted(len(files), 'file')} matching {where}"
        reasons = (
            f"the preview shows why each line of {files[0].key} is rejected "
            f"(`kmdagster preview {source.name} --key KEY` shows another file's)"
        )
    raise SetupRuleError(
        f"no valid line in {scope} (KISSmetrics' setup rule needs at least one): {reasons}; "
        "fix the files and upload them again",
        preview,
    )
