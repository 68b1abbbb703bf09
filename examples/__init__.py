"""Runnable examples: `hicom-video-qa` (video_qa.py) and relevance maps (relevance_map.py)."""
