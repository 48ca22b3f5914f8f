"""Functional attention operators of DynaST and StyA2K."""
