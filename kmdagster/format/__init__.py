"""Pure format logic: validate KM JSON lines and split them into warehouse rows."""
