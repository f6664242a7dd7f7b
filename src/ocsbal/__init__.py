"""ocsbal: a SIP-aware software load balancer for SIP server pools."""
