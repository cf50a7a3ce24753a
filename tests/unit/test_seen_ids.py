"""processors.fanout.SeenIds: the fan-out's bounded memory of delivered ids, compact, behaves as
an insertion-ordered map that forgets its oldest ids beyond its capacity."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from civicbus.ids import Publication
from processors.fanout import SeenIds

SOURCES = ("hotline12345", "citymgmt", "police")
ids = st.integers(0, 12).map(lambda n: f"id-{n}".encode())
publications = st.builds(lambda source, said: Publication(source, hashlib.sha256(said.encode()).hexdigest()[:32]),
                         st.sampled_from(SOURCES), st.text(max_size=5))


@given(st.integers(1, 6), st.lists(st.tuples(ids, publications), max_size=40))
def test_seen_ids_answer_as_an_ordered_map_that_forgets_its_oldest(capacity, additions):
    seen, model = SeenIds(capacity), OrderedDict()
    for event_id, publication in additions:
        seen.add(event_id, publication)
        model[event_id] = publication
        if len(model) > capacity:
            model.popitem(last=False)
        assert len(seen) == len(model)
    for event_id in {event_id for event_id, _ in additions}:
        assert (event_id in seen) == (event_id in model)
        assert seen.get(event_id) == model.get(event_id)  # the publication as it was given, digest and all
