"""fedtune's Flower ServerApp (component ``server_app.app:app``)."""
