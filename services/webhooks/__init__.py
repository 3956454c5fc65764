"""The webhooks service: signed, at-least-once delivery of every event, with a log and redelivery."""
