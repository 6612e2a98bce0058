"""Operator review: the read model of flagged clients, actions with an audit trail, the
admin API (``/admin/api/``) and the dashboard (``/admin/``)."""
