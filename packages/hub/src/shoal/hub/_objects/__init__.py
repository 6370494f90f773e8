"""Remote objects: scatter, gather, proxies, Ref."""
