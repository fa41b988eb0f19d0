"""vmpool: instantly available virtual machines, served from pools kept full in the background."""
