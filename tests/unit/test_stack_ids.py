"""The local stack's KRaft cluster ids are ones Kafka's storage tool accepts."""

import base64

from atas.common.stack import kafka_cluster_id


def test_cluster_ids_are_16_byte_uuids_that_never_look_like_an_option():
    ids = [kafka_cluster_id() for _ in range(5000)]  # a plain base64 UUID starts with "-" 1 time in 64
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
