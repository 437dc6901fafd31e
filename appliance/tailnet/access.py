"""Who may see and reach whom. Until a policy is loaded, every node may see every node."""

from __future__ import annotations

from typing import Protocol

ALLOW_ALL_FILTER = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]


class Access(Protocol):
    def peers(self, viewer_id: int, candidates: set[int]) -> set[int]: ...
    def packet_filter(self, node_id: int) -> list: ...
    def ssh_policy(self, node_id: int) -> dict | None: ...
    def cap_map(self, node_id: int) -> dict: ...


class AllowAll:
    def peers(self, viewer_id: int, candidates: set[int]) -> set[int]:
        return candidates - {viewer_id}

    def packet_filter(self, node_id: int) -> list:
        return ALLOW_ALL_FILTER

    def ssh_policy(self, node_id: int) -> dict | None:
        return None

    def cap_map(self, node_id: int) -> dict:
        return {}
