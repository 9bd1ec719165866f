"""The node's side of the trade: what the store holds per image (status), freeing disk by
demotion before kubelet deletes (evict), checking a node's settings (doctor) and exporting
it all to Prometheus (metrics)."""
