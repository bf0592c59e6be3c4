"""What users see: status text and events, the timeline and its widget."""
