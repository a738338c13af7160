def list_folders(dirfd: int) -> list[str]:
    """The sub-folders of the open folder `dirfd` (links to folders too), in directory order,
    hidden ones left out."""

def stat_folders(
    dirfd: int, names: list[str], files: tuple[str, ...], threads: int
) -> tuple[bytes, int]:
    """Size and mtime (ns) of each of `files` in each folder of `names` under the open folder
    `dirfd`, as native int64 pairs ((-1, -1) for a file that is not there), stat-ed by
    `threads` threads; and the first folder with any other error, or -1."""
