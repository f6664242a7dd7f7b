"""twistd plugin: ``twistd ocsbal --config pool.ini``."""

from twisted.application.service import ServiceMaker

ocsbal = ServiceMaker(
    "ocsbal",
    "ocsbal.tap",
    "SIP-aware load balancer for an Office Communications Server pool.",
    "ocsbal",
)
