"""Events: what happens in the tailnet, for webhooks and the server-sent-events stream."""
