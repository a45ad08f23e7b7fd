"""gRPC servicers: proto in, domain calls, proto out; nothing decides here."""
