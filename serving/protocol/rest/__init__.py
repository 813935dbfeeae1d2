"""TensorFlow Serving's REST API over aiohttp."""
