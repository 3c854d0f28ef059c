"""Evaluation protocols, one file each, found by name (`--excluder market1501`).

An excluder module exposes a class `Excluder`:

    Excluder(gallery_fids)          gallery_fids: (G,) array of file names
    excluder(query_fids) -> mask    query_fids: (Q,), mask: (Q, G) bool, True = ignore

An ignored gallery entry counts neither as a match nor as a mistake for that query. A file
name the protocol cannot parse raises common.InputError naming the file.
"""
