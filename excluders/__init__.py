"""Evaluation protocols, one file each, found by name (`--excluder market1501`).

An excluder module exposes a class `Excluder` and a list `EXAMPLES` of a few gallery file
names it accepts (tests/test_excluders.py checks every module with them):

    Excluder(gallery_fids)          gallery_fids: (G,) array of file names
    excluder(query_fids) -> mask    query_fids: (Q,), mask: (Q, G) bool, True = ignore

An ignored gallery entry counts neither as a match nor as a mistake for that query; a query's
own file is always ignored. A file name the protocol cannot parse raises common.InputError
naming the file. A protocol that reads identity and camera from file names keeps its regular
expression in `PATTERN` (groups: identity, camera), which data/prepare.py and evaluate.py's
multi-query use too. For video (`evaluate.py --tracklets`), the frames of one tracklet share
their folder and the name up to the end of the pattern's last group: a third group, the
tracklet number (MARS), tells tracklets of one identity and camera apart.
"""
