"""The free teacher: TIES merge (pure), checkpoint buffer, merged model scoring. Arrives with issue 4."""
