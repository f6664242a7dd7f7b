"""
Embed a pool in a Twisted application: ``twistd -ny examples/embed.py``.

The pool is built in code, from the same classes the INI loader returns, and
added to the application's service tree beside anything else it runs.
"""

from twisted.application.service import Application

from ocsbal import Pool, PoolService, Port, PortProtocol, Server

pool = Pool(
    name="embedded",
    fqdn="embedded.example.com",
    vip="127.0.0.10",
    servers=(
        Server("fe01", "127.0.0.11", weight=100),
        Server("fe02", "127.0.0.12", weight=100),
        Server("fe03", "127.0.0.13", weight=50),
    ),
    ports=(Port(5060, PortProtocol.SIP), Port(5065, PortProtocol.TCP)),
    scheduler="weighted-least-connections",
    idle_timeout=1800,
)

application = Application("ocsbal-embedded")
PoolService(pool, grace_period=5).setServiceParent(application)
