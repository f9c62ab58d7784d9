"""The video path: cameras -> keyframe-aligned segments -> the in-memory ring -> clips on disk.

Each stage is a small sink fed by the one before; nothing touches the disk before an alarm
(unless continuous recording is on), and every segment is hash-chained for tamper evidence.
"""
