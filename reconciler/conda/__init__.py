"""Pure conda knowledge: archives, records, repodata, patches and derived indexes.

Nothing in this package touches the network; functions take and return data.
"""
