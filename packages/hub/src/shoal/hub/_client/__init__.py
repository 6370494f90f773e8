"""The user's side: the Client and its transport, views, AsyncResult, errors."""
