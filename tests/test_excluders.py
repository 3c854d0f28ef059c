"""excluders/: every protocol's mask, and clear errors for names it cannot parse."""
import numpy as np
import pytest

import common
from model import import_plugin, plugin_names
from excluders import diagonal, duke, market1501


@pytest.mark.parametrize('name', plugin_names('excluders'))
def test_every_excluder_keeps_the_contract(name):
    """On the module's own example names: a (Q, G) bool mask, the query's own file ignored."""
    module = import_plugin('excluders', name)
    assert len(module.EXAMPLES) >= 2, 'an excluder lists a few example file names'
    gallery = np.array(['dir/' + fid for fid in module.EXAMPLES])
    queries = gallery[::-1][:2]
    mask = module.Excluder(gallery)(queries)
    assert mask.shape == (2, len(gallery)) and mask.dtype == bool
    assert mask[0, len(gallery) - 1] and mask[1, len(gallery) - 2]


def test_market1501_rules():
    gallery = np.array(['bounding_box_test/0001_c1s1_000001_00.jpg',  # same id, same camera
                        'bounding_box_test/0001_c2s1_000002_00.jpg',  # same id, other camera
                        'bounding_box_test/-1_c3s1_000003_00.jpg',  # junk
                        'bounding_box_test/0000_c1s1_000004_00.jpg',  # distractor
                        'bounding_box_test/0002_c1s1_000005_00.jpg'])  # other id, same camera
    mask = market1501.Excluder(gallery)(np.array(['query/0001_c1s2_000009_00.jpg']))
    assert mask.tolist() == [[True, False, True, False, False]]


def test_duke_rules():
    gallery = np.array(['bounding_box_test/0005_c2_f0000001.jpg',
                        'bounding_box_test/0005_c5_f0000002.jpg',
                        'bounding_box_test/0007_c2_f0000003.jpg'])
    mask = duke.Excluder(gallery)(np.array(['query/0005_c2_f0046985.jpg']))
    assert mask.tolist() == [[True, False, False]]


def test_diagonal_hides_only_the_same_file():
    gallery = np.array(['a.jpg', 'b.jpg', 'a.jpg', 'c.jpg'])
    mask = diagonal.Excluder(gallery)(np.array(['a.jpg', 'x.jpg']))
    assert mask.tolist() == [[True, False, True, False], [False] * 4]


@pytest.mark.parametrize('module', [market1501, duke])
def test_unparsable_names_are_named(module):
    with pytest.raises(common.InputError, match='holiday_photo.jpg'):
        module.Excluder(np.array(['bounding_box_test/holiday_photo.jpg']))


def test_mars_rules():
    """MARS's rule per frame: `00-1` is junk, `0000` a distractor that counts."""
    from excluders import mars
    gallery = np.array(['bbox_test/0001/0001C1T0002F001.jpg',  # same id, same camera
                        'bbox_test/0001/0001C2T0003F001.jpg',  # same id, other camera
                        'bbox_test/00-1/00-1C3T0001F001.jpg',  # junk
                        'bbox_test/0000/0000C1T0001F001.jpg',  # distractor
                        'bbox_test/0012/0012C1T0001F001.jpg'])  # other id, same camera
    mask = mars.Excluder(gallery)(np.array(['bbox_test/0001/0001C1T0001F005.jpg']))
    assert mask.tolist() == [[True, False, True, False, False]]
    with pytest.raises(common.InputError, match='0001C1F001.jpg'):
        mars.Excluder(np.array(['bbox_test/0001/0001C1F001.jpg']))
