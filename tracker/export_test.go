package tracker

// HeadroomShare exposes headroomShare to the external tests.
var HeadroomShare = headroomShare
