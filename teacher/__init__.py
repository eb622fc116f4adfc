"""The free teacher: its checkpoint buffer, the streamed TIES merge, the merged model's scoring and guidance."""
