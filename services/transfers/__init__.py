"""The transfers service: currency moving between tenants (issue 14). Today: the destinations under
the transfer policy, and the SMS, phone and code parts the transfers will use."""
