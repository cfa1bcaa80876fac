"""fedtune's Flower ClientApp (component ``client_app.app:app``)."""
