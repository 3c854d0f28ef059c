"""Plain retrieval without cameras: a query never retrieves its own file, nothing else is ignored.

Use it when query and gallery are the same set (e.g. Stanford Online Products, or a dataset
evaluated against itself), or when there are no camera labels.
"""
import numpy as np

EXAMPLES = ['a.jpg', 'b.jpg', 'folder/a.jpg']


class Excluder:
    def __init__(self, gallery_fids: np.ndarray):
        self.columns: dict[str, list[int]] = {}
        for column, fid in enumerate(gallery_fids):
            self.columns.setdefault(fid, []).append(column)
        self.gallery_size = len(gallery_fids)

    def __call__(self, query_fids: np.ndarray) -> np.ndarray:
        """The (Q, G) mask: True where the gallery entry is the query's own file."""
        mask = np.zeros((len(query_fids), self.gallery_size), bool)
        for row, fid in enumerate(query_fids):
            mask[row, self.columns.get(fid, [])] = True
        return mask
