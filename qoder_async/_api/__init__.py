"""The REST resources (sessions, agents, environments, files, models) and custom tools."""
