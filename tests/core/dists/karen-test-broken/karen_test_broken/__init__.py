raise RuntimeError("karen-test-broken explodes at import")
