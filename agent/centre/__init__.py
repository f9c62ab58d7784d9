"""The reference centre (the ЦОУ side): the receiver that stores what boxes send, its ledger,
and the commands the centre signs and sends back. It trusts no box (docs/security.md).
"""
