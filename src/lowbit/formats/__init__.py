"""Packed layouts: pack(codes, qparams) -> tensors, unpack, exact byte counts. No algorithms here."""
