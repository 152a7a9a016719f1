"""MEXC's protobuf push messages (generated from ``mexc_push.proto``; see that file to regenerate)."""

from marketpipe.exchanges.mexc_pb.mexc_push_pb2 import (
    PublicAggreDealsV3Api,
    PublicAggreDealsV3ApiItem,
    PublicAggreDepthsV3Api,
    PublicAggreDepthV3ApiItem,
    PublicMiniTickerV3Api,
    PublicSpotKlineV3Api,
    PushDataV3ApiWrapper,
)

__all__ = [
    "PublicAggreDealsV3Api",
    "PublicAggreDealsV3ApiItem",
    "PublicAggreDepthV3ApiItem",
    "PublicAggreDepthsV3Api",
    "PublicMiniTickerV3Api",
    "PublicSpotKlineV3Api",
    "PushDataV3ApiWrapper",
]
