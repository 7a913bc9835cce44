from __future__ import annotations

import pytest

from tasks.routing import InvalidNodeName, queue_for_node


def test_each_node_has_its_own_queue() -> None:
    assert queue_for_node("ip-10-0-1-5.ec2.internal") == "warm.node.ip-10-0-1-5.ec2.internal"


@pytest.mark.parametrize("bad", ["", "Node-1", "-a", "a_b", "a" * 254, "a..b"])
def test_a_name_that_is_not_a_dns_subdomain_is_refused(bad: str) -> None:
    with pytest.raises(InvalidNodeName, match="invalid node name"):
        queue_for_node(bad)
